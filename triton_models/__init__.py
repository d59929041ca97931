"""Triton python-backend models. `tritonstack export` copies one of these into `<version>/model.py`.

They run inside Triton's backend stub, which imports `triton_python_backend_utils`; keep them free of
imports from this project so a copied model.py works wherever Triton runs with the same pip packages.
"""
