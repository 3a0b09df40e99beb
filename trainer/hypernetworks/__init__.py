"""Hypernetworks: the network and its files (network), and how it wraps cross-attention (attention)."""
