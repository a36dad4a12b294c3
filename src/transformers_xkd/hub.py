"""Uploading a finished model folder to the Hugging Face Hub: the one push helper of the package.

The converter, the linear-evaluation / fine-tuning runner and the distillation runner write a complete folder
(weights, config, README.md card from `model_card`) and then call `push_folder_to_hub`, which is
`huggingface_hub.HfApi.create_repo` + `upload_folder` with the checks and the error message they share.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["push_folder_to_hub", "PUSH_IGNORE_PATTERNS"]

# Trainer leftovers and caches never belong in the model repo.
PUSH_IGNORE_PATTERNS = ["checkpoint-*", "checkpoint-*/*", "runs/*", "_*", "*.npz", "features/*", ".cache/*"]


def push_folder_to_hub(folder, repo_id: str, *, commit_message: str = "Upload XKD model", private: bool | None = None,
                       token: str | None = None, revision: str | None = None):
    """Create `repo_id` if needed and upload `folder` (minus `PUSH_IGNORE_PATTERNS`); the folder is only read.

    The folder must hold config.json, README.md and `.safetensors` weights (a `ValueError` names what is missing).
    The token is `token`, HF_TOKEN or the saved login. Any failure of the upload itself (no network, no token, no
    permission) raises a `RuntimeError` that says so and that the local folder is complete; the upload can be
    retried with `hf upload <repo_id> <folder>`. `huggingface_hub.HfApi` is looked up at call time, so tests can
    stand in a local fake. Returns what `upload_folder` returns (a `CommitInfo`, which is a str: the commit URL).
    """
    import huggingface_hub

    folder = Path(folder)
    for required in ("config.json", "README.md"):
        if not (folder / required).is_file():
            raise ValueError(f"{folder} has no {required}: save the model and write its card before pushing")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no .safetensors weights to push")
    try:
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, revision=revision,
            repo_type="model", ignore_patterns=PUSH_IGNORE_PATTERNS,
        )
    except Exception as err:  # network, auth and HTTP errors come in many types; all mean the same to the user
        raise RuntimeError(
            f"Pushing {folder} to the Hub repo {repo_id!r} failed ({type(err).__name__}: {err}). The folder "
            f"{folder} is complete and unchanged; retry later with `hf upload {repo_id} {folder}` "
            "(check your network and `hf auth login` / HF_TOKEN)."
        ) from err
