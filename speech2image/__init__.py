"""speech2image: speak a prompt, get images. Shared code of the gateway client and both Executors."""

import warnings

# jina imports jina-hubble-sdk, which imports setuptools' pkg_resources, which warns on every
# import that it is deprecated: a notice for hubble's authors that a newcomer reads as a fault
# of ours (requirements pin setuptools<81, which still has it). Only that warning is silenced.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
# jina's gateway declares its HTTP models with pydantic 1 config keys, which pydantic 2 reads
# and warns about in every gateway start: jina's, harmless, and nothing a user can act on.
warnings.filterwarnings(
    'ignore', message='Valid config keys have changed in V2', category=UserWarning
)
