"""`POST /v1/classify`: texts → label scores from a sequence-classification model."""
