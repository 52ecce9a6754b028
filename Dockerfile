# GPU training image: the official PyTorch + CUDA runtime, this package on top.
#
#   docker build -t gpt4-lightning .
#   docker run --gpus all --ipc=host --user "$(id -u):$(id -g)" \
#       -v "$PWD/outputs:/app/outputs" -v "$HOME/.cache/gpt4_lightning:/cache" \
#       gpt4-lightning model=gpt4_2b trainer=fsdp precision=bf16_mixed
#
# Arguments after the image name are Hydra overrides for `python -m gpt4_lightning.train`; other entry
# points: --entrypoint python gpt4-lightning -m gpt4_lightning.generate ... (see launch/README.md).
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GPT4_LIGHTNING_CACHE=/cache \
    HF_HOME=/cache/huggingface

# The dependencies first, read from pyproject.toml alone: this layer is rebuilt only when pyproject.toml
# changes, not on every code change. The image's torch satisfies the torch requirement and is kept.
WORKDIR /opt/gpt4_lightning
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; sys.stdout.write('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the package itself (its dependencies are in place already).
COPY README.md ./
COPY conf ./conf
COPY gpt4_lightning ./gpt4_lightning
COPY hydra_plugins ./hydra_plugins
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Run as a non-root user from an empty working directory (so `gpt4_lightning` is imported from the installed
# package, which holds conf/ as gpt4_lightning.conf); outputs/ and multirun/ are written here. Both
# directories are writable for any uid, so `--user "$(id -u):$(id -g)"` can own what lands in mounted volumes.
RUN groupadd --gid 10001 app \
    && useradd --create-home --uid 10001 --gid 10001 app \
    && mkdir -p /app/outputs /cache \
    && chown app:app /app /app/outputs /cache \
    && chmod 1777 /app /app/outputs /cache
USER 10001:10001
WORKDIR /app

ENTRYPOINT ["python", "-m", "gpt4_lightning.train"]
CMD []
