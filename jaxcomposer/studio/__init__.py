"""The studio: a local web page to generate, see, hear and download samples (`--mode=serve`)."""
