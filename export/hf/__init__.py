"""`tritonstack export hf`: any Hugging Face encoder, reranker or classifier from a local directory."""
