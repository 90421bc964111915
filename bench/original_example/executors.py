"""The two Executors of jina-ai/example-speech-to-image (commit fb6ab4f), as close to the
original as CPU and offline models allow, to measure this project against on the same machine.

Changed from the original, and only this: the models load from local paths (``model_name`` is a
path openai-whisper's ``load_model`` accepts; ``model_path`` replaces the Hub name and the auth
token), the pipeline stays on the CPU in float32 (the original moves it to CUDA in float16), and
there is no ``torch.autocast('cuda')``. The endpoints, their loops and their defaults (50 steps,
guidance 7.5, one pipeline call per document, images as PNG data URIs) are the original's.
"""

from diffusers import StableDiffusionPipeline
from docarray import Document, DocumentArray
from jina import Executor, requests


class WhisperExecutor(Executor):
    def __init__(self, model_name: str = 'base', *args, **kwargs):
        super().__init__(*args, **kwargs)
        import whisper

        self.model = whisper.load_model(model_name)

    @requests
    def transcribe(self, docs: DocumentArray, **kwargs):
        for doc_ in docs:
            model_output = self.model.transcribe(
                doc_.uri if doc_.tensor is None else doc_.tensor,
                task='translate',
                language=doc_.tags.get('language', 'English'),
            )
            doc_.text = model_output['text']
            doc_.tags['segments'] = model_output['segments']
            doc_.tags['language'] = model_output['language']
        return docs


class StableDiffusionExecutor(Executor):
    def __init__(self, model_path: str, **kwargs):
        super().__init__()
        self.diffusion = StableDiffusionPipeline.from_pretrained(model_path).to('cpu')

    @requests(on='/')
    def generate(self, docs: DocumentArray, parameters: dict, **kwargs):
        num_images = parameters.get('num_images', 1)
        for document in docs:
            self.generate_image_from_document(document, num_images)
        return docs

    def generate_image_from_document(self, document: Document, num_images: int) -> Document:
        generated_imgs = self.diffusion([document.text] * int(num_images)).images
        for img in generated_imgs:
            _generated_document = Document(
                tags={'text': document.text, 'generator': self.__class__.__name__}
            ).load_pil_image_to_datauri(img)
            document.matches.append(_generated_document)
