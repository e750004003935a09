"""`router admin`: the RouterAdmin API from the command line."""
