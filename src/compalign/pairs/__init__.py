"""Pairs: ranked galleries -> pairwise preference data for reward training (`make.make_pairs`)."""
