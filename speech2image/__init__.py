"""speech2image: speak a prompt, get images. Shared code of the gateway client and both Executors."""

import warnings

# jina imports jina-hubble-sdk, which imports setuptools' pkg_resources, which warns on every
# import that it is deprecated: a notice for hubble's authors that a newcomer reads as a fault
# of ours (requirements pin setuptools<81, which still has it). Only that warning is silenced.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)
