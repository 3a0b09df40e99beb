"""Prompts: the A1111 prompt grammar (parser), prompt to text-encoder conditioning (conditioning), and the
parsed view of a prompt shown in the page (view)."""
