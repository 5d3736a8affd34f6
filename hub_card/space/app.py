"""A Hugging Face Space for a medvqa-lite model: the web app of `medvqa app`, on the model named in README.md.

`medvqa push --space REPO_ID --model MODEL_ID` uploads this file, README.md (whose `models:` metadata names the
model), requirements.txt, and the `training` and `modeling_medvqa` packages the app runs on.  A private model
needs an `HF_TOKEN` secret in the Space settings.
"""

import os

from training.app import model_from_space_readme, serve

MODEL_ID = model_from_space_readme("README.md")

if __name__ == "__main__":
    # Spaces route traffic to 0.0.0.0:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT say so there).
    serve(
        MODEL_ID,
        host=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
