"""classictask: scikit-learn's digits, the model, and its evaluation, for both sides."""
