"""Demo model: a ResNeSt_tiny trained on scikit-learn's 8x8 handwritten digits, with its held-out set."""
