"""The original example (jina-ai/example-speech-to-image) served on this machine, as the outside
reference of bench.original_workload: its Executors (executors.py) in a DocArray v1 environment
(environment.py), measured by __main__.py."""
