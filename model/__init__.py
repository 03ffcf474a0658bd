"""Networks, pruning methods, training and the direct sparse convolution kernel."""
