"""sklearnclassic: a Flower / scikit-learn app."""
