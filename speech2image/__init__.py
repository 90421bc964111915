"""speech2image: speak a prompt, get images. Shared code of the gateway client and both Executors."""
