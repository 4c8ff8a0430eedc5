"""sklearnmessage: a Flower / scikit-learn app."""
