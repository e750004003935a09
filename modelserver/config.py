"""The model directory's `model.yaml`, validated, plus the server's own settings."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from gamaserving.settings import (
    SettingsError,
    StrictSettings,
    field_errors,
    format_errors,
    read_mapping,
    validate_mapping,
)
from gamaserving.tls import ServerTls

CONFIG_FILE = "model.yaml"


class Task(StrEnum):
    """What a client asks of the audio. The router's task enum maps onto these names."""

    TRANSCRIBE = "transcribe"
    TAG = "tag"
    EMBED = "embed"
    DESCRIBE = "describe"


class Limits(StrictSettings):
    """Input limits enforced before any decoding work is spent."""

    max_audio_seconds: float = Field(30.0, gt=0, le=3600)
    """Longest accepted clip, after decoding."""
    min_audio_seconds: float = Field(0.05, ge=0)
    """Shortest accepted clip: the models need a few frames."""
    max_audio_bytes: int = Field(16 * 1024 * 1024, gt=0)
    """Largest accepted encoded file or raw waveform, in bytes (INVALID_ARGUMENT beyond)."""
    max_prompt_chars: int = Field(2000, gt=0)
    """Longest accepted prompt."""


class Batching(StrictSettings):
    """Dynamic batching: concurrent requests are grouped before the model runs."""

    max_batch_size: int = Field(16, ge=1, le=1024)
    """Most requests in one model call; 1 turns batching off."""
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    """How long the first queued request may wait for others to join its batch."""
    max_queue_size: int = Field(256, ge=1)
    """Requests waiting beyond this are refused with RESOURCE_EXHAUSTED."""


class ContinuousBatching(StrictSettings):
    """Per-step scheduling of generation (GAMA's describe): sequences join the running decode
    batch after their prefill and leave it the step they finish."""

    enabled: bool = True
    """False decodes describe in the dynamic batcher, each batch until its longest answer ends."""
    kv_budget_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] = 16384
    """KV-cache slots in flight: rows x the longest row's prompt + max_new_tokens; beyond it,
    new sequences wait. `auto` plans it from memory before loading (modelserver/plan.py:
    available x memory_fraction - weights - an activation reserve, over the KV bytes per
    token); a number is checked against the same plan at start."""
    memory_fraction: float = Field(0.9, gt=0, le=1)
    """Share of the device's available memory the plan may use (vLLM's
    gpu_memory_utilization)."""
    max_sequences: int = Field(64, ge=1, le=4096)
    """Most sequences in one decode step."""
    max_waiting: int = Field(256, ge=0)
    """Sequences waiting for a slot; beyond this, RESOURCE_EXHAUSTED."""
    max_prefill_per_step: int = Field(8, ge=1, le=1024)
    """New sequences prefilled per step: bounds the pause a prefill puts into running answers."""
    max_call_ms: float = Field(20.0, ge=0, le=1000)
    """Decode steps run back to back on the inference thread for up to this long, while nothing
    needs the scheduler (an arrival, a finish, a cancellation, a deadline), and their text
    goes out as one streamed piece per sequence (vLLM's multi-step scheduling). It bounds how
    long a streamed piece is held; 0 visits the scheduler after every step."""


class Warmup(StrictSettings):
    """Requests run before the server reports ready, so first calls are not slow."""

    iterations: int = Field(2, ge=0, le=100)
    """Warm-up passes over every task (0 skips warm-up)."""
    seconds: float = Field(1.0, gt=0, le=60)
    """Length of the synthetic warm-up clip."""
    max_new_tokens: int = Field(8, ge=1, le=4096)
    """A warm-up describe stops after this many tokens: it warms every kernel a longer answer
    would (a full 400-token answer kept a 7B model on a CPU from readiness for minutes)."""


class Wav2Vec2Settings(StrictSettings):
    """wav2vec2 family: CTC transcription, embeddings, optional classification head."""

    head: Literal["ctc", "classification"] = "ctc"
    """The exported head: CTC over `vocab`, or sequence classification over `labels`."""
    vocab: list[str] = Field(default_factory=list)
    """CTC vocabulary, index order (required for the ctc head)."""
    blank_id: int = Field(0, ge=0)
    """CTC blank (the tokenizer's pad token)."""
    word_delimiter: str = "|"
    """Vocabulary entry that stands for a space."""
    use_attention_mask: bool = True
    """False for group-norm feature encoders (wav2vec2-base): batches then hold equal lengths."""
    top_k: int = Field(5, ge=1)
    """Labels returned per clip by a classification head, highest score first."""


class GamaGeneration(StrictSettings):
    """GAMA's decoding; the defaults are the release's (`gama_inf.py`)."""

    max_new_tokens: int = Field(400, ge=1, le=4096)
    """Upper bound on answer tokens; requests may ask for fewer."""
    temperature: float = Field(0.1, ge=0, le=2)
    """Sampling temperature; 0 is greedy. Requests may set their own."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens holding this much probability."""
    top_k: int = Field(500, ge=0)
    """Sample among the k most likely tokens (0 turns it off)."""
    repetition_penalty: float = Field(1.1, gt=0)
    """transformers' repetition penalty over the prompt and the answer so far."""


ALPACA_SHORT = "### Instruction:\n{instruction}\n\n### Response:\n"
TAG_PROMPT = "What sound events can be heard in this audio? Answer with their names."


class GamaSettings(StrictSettings):
    """GAMA as released: the audio path, the LLM with LoRA merged, its tokenizer, its prompt."""

    audio: str = "audio.safetensors"
    """Weights of the audio path (CAV-MAE, aggregator, Q-Former, projections)."""
    lm: str = "lm"
    """transformers LLaMA directory (LoRA merged by the converter)."""
    tokenizer: str = "tokenizer"
    """The LLaMA tokenizer directory."""
    head_width: int = Field(64, ge=1)
    """Attention head width of the audio path (heads = width / head_width), as released."""
    prompt_template: str = ALPACA_SHORT
    """The release's `alpaca_short` template; `{instruction}` is the request's prompt."""
    tag_prompt: str = TAG_PROMPT
    """Instruction for `tag`: labels come from GAMA's answer to it (docs/protocol.md)."""
    tag_max_new_tokens: int = Field(48, ge=1, le=1024)
    """Answer length for `tag`, decoded greedily."""
    fbank_mean: float = -5.081
    """GAMA's filterbank normalisation mean."""
    fbank_std: float = 4.4849
    """GAMA's normalisation divisor: (x - mean) / std."""
    max_frames: int = Field(1024, ge=16)
    """Filterbank frames after padding or cropping (10 ms each)."""
    num_mel_bins: int = Field(128, ge=16)
    """Mel bins of the filterbank."""
    generation: GamaGeneration = GamaGeneration()
    """Answer-text decoding."""

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        # Exports before the top-level `dtype` wrote gama.cuda_dtype: bfloat16, which is what
        # `dtype: auto` does on CUDA. Any other value needs the new field.
        if isinstance(data, dict) and "cuda_dtype" in data:
            data = dict(data)
            if data.pop("cuda_dtype") != "bfloat16":
                raise ValueError(
                    "cuda_dtype: moved to the top-level `dtype` (auto | float32 | bfloat16 | "
                    "float16); set `dtype` there and remove gama.cuda_dtype"
                )
        return data

    @model_validator(mode="after")
    def _template(self) -> GamaSettings:
        if "{instruction}" not in self.prompt_template:
            raise ValueError("prompt_template: must contain {instruction}")
        return self


class ModelConfig(StrictSettings):
    """`model.yaml`: one served model and its exported artifacts."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Model name in the OIP API."""
    version: str = Field("1", min_length=1)
    """Model version in the OIP API."""
    family: Literal["wav2vec2", "gama"]
    """Pre- and post-processing family."""
    runtime: Literal["onnx", "torch"]
    """onnx: an ONNX file run by ONNX Runtime; torch: a transformers checkpoint directory."""
    artifact: str = Field(min_length=1)
    """Path of the artifact relative to the model directory."""
    sample_rate: int = Field(16000, ge=8000, le=192_000)
    """Rate the model expects; inputs are resampled to it."""
    labels: list[str] = Field(default_factory=list)
    """Label names, index order, for tagging and classification heads (gama: the names its
    answers are matched against)."""
    downmix: Literal["mean", "first"] = "mean"
    """How multi-channel audio becomes mono: the channels' mean, or the first channel (as
    GAMA's release reads files)."""
    limits: Limits = Limits()
    batching: Batching = Batching()
    warmup: Warmup = Warmup()
    continuous_batching: ContinuousBatching = ContinuousBatching()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """GAMA's compute precision: `auto` is bfloat16 on CUDA (as the release was trained) and
    float32 on the CPU; bfloat16 on a CPU needs native support (AVX512-BF16, AMX, FEAT_BF16),
    float16 needs CUDA. `modelserver serve --dtype` overrides it."""
    fp16: bool = False
    """Half precision for wav2vec2's torch runtime on CUDA (ignored on CPU)."""
    intra_op_threads: int = Field(0, ge=0)
    """Compute threads for the runtime; 0 lets it choose."""
    wav2vec2: Wav2Vec2Settings | None = None
    gama: GamaSettings | None = None

    @model_validator(mode="after")
    def _family_settings(self) -> ModelConfig:
        if self.family == "wav2vec2":
            settings = self.wav2vec2 or Wav2Vec2Settings()
            if settings.head == "ctc" and not settings.vocab:
                raise ValueError("wav2vec2.vocab: a ctc head needs its vocabulary")
            if settings.head == "ctc" and settings.blank_id >= len(settings.vocab):
                raise ValueError("wav2vec2.blank_id: outside the vocabulary")
            if settings.head == "classification" and not self.labels:
                raise ValueError("labels: a classification head needs its label names")
            object.__setattr__(self, "wav2vec2", settings)
        if self.family == "gama":
            if self.runtime != "torch":
                raise ValueError("runtime: the gama family runs on the torch runtime")
            object.__setattr__(self, "gama", self.gama or GamaSettings())
        return self

    @property
    def tasks(self) -> tuple[Task, ...]:
        if self.family == "gama":
            tag = (Task.TAG,) if self.labels else ()
            return (*tag, Task.EMBED, Task.DESCRIBE)
        assert self.wav2vec2 is not None
        if self.wav2vec2.head == "ctc":
            return (Task.TRANSCRIBE, Task.EMBED)
        return (Task.TAG, Task.EMBED)


class ModelDirError(Exception):
    """The model directory cannot be served; the message names the problem."""


def load_model_config(model_dir: Path) -> ModelConfig:
    """Read and validate `model.yaml`, and check that every artifact it names exists."""
    path = model_dir / CONFIG_FILE
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir}: not a directory")
    if not path.is_file():
        raise ModelDirError(f"{path}: missing (every model directory needs a {CONFIG_FILE})")
    try:
        config = validate_mapping(ModelConfig, read_mapping(path), path)
    except SettingsError as exc:
        raise ModelDirError(str(exc)) from exc
    except ValidationError as exc:
        raise ModelDirError(format_errors(path, "model configuration", field_errors(exc))) from exc
    required = [("artifact", config.artifact)]
    if config.gama is not None:
        g = config.gama
        required += [
            ("gama.audio", g.audio),
            ("gama.lm", g.lm),
            ("gama.tokenizer", g.tokenizer),
        ]
    for field, rel in required:
        if not (model_dir / rel).exists():
            raise ModelDirError(f"{path}: {field}: {model_dir / rel} does not exist")
    return config


def write_model_config(model_dir: Path, config: ModelConfig) -> None:
    data = config.model_dump(mode="json", exclude_none=True)
    (model_dir / CONFIG_FILE).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


class ServerSettings(StrictSettings):
    """How `modelserver serve` runs (command line and MODELSERVER_* environment)."""

    model_dir: Path
    """Directory holding model.yaml and the artifacts."""
    host: str = "0.0.0.0"
    """Interface to listen on."""
    port: int = Field(50061, ge=0, le=65535)
    """gRPC port (0 picks a free one)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto uses CUDA only when it really works."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    """Overrides the model's `dtype` (`modelserver serve --dtype`)."""
    device_memory: int | None = Field(None, gt=0)
    """Bytes the memory plan may count on, instead of what the device has available (a share
    of a GPU, a container's budget)."""
    emulated_bfloat16: bool = False
    """Serve bfloat16 on a CPU without native support (torch emulates it: several times
    slower than float32, in half the memory), instead of refusing it."""
    grace_seconds: float = Field(20.0, ge=0)
    """On SIGTERM, in-flight requests get this long to finish."""
    drain_delay_seconds: float = Field(0.0, ge=0)
    """On SIGTERM, keep serving while NOT_SERVING propagates to load balancers."""
    stuck_after_seconds: float = Field(60.0, gt=0)
    """Liveness turns NOT_SERVING when one model call runs longer than this."""
    max_message_bytes: int = Field(32 * 1024 * 1024, gt=1024)
    """gRPC message size limit, both directions."""
    fault_threshold: int = Field(3, ge=1)
    """Consecutive runtime faults that take readiness to NOT_SERVING until a self-test passes."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Prometheus scrape port (0 picks one); None turns the endpoint off."""
    self_test_seconds: float = Field(5.0, gt=0)
    """While faulted, how often the server re-runs its warm-up to recover readiness."""
    tls: ServerTls | None = None
    """Serve TLS with this certificate; mutual TLS when it names a client CA."""
    health_port: int | None = Field(None, ge=0, le=65535)
    """Plaintext port serving only grpc.health.v1, for probes that cannot speak TLS."""
