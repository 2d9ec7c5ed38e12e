"""The Ray Serve application: a FastAPI gateway over a multiplexed, batching transcriber.

`build_app(args)` is the builder that `serve run` / `serve deploy` call through
serve/config.yaml (import_path `midiforge.serving.app:build_app`); replica counts,
autoscaling and resources come from that YAML, never from here.
"""

# No `from __future__ import annotations` here: the Gateway class is built inside
# build_app and shipped to replicas by cloudpickle, which carries the objects a function
# references but not names hidden in string annotations, so FastAPI could not resolve them.
import asyncio
import hmac
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import File, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from midiforge import config as cfgmod
from midiforge.serving.requests import (
    RequestError,
    check_upload_size,
    notes_json,
    notes_midi,
    read_upload,
)
from midiforge.serving.settings import ServeSettings

log = logging.getLogger(__name__)
# Room for the multipart boundaries and part headers (the file name among them) around an
# upload of max_upload_bytes, so a request's Content-Length alone can refuse a larger one.
MULTIPART_SLACK_BYTES = 64 * 1024
# Models each replica holds at once (Serve's multiplexed LRU): a few transcribers, whose
# sessions are small; fewer language models and classifiers.
TRANSCRIBER_MODELS = 3
GENERATOR_MODELS = 2
CLASSIFIER_MODELS = 2


def registry_check(
    models_root: str | None, kind: str, builtin: tuple[str, ...] = ()
) -> Callable[[str], None]:
    """name -> None when the registry holds a model of `kind` by that name (or it is one
    of `builtin`); RegistryError (a 404) otherwise."""

    def check(name: str) -> None:
        from midiforge.registry import Registry, RegistryError

        if name in builtin:
            return
        manifest = Registry(models_root).manifest(name)
        if manifest.kind != kind:
            raise RegistryError(f"model {name!r} is a {manifest.kind}, not a {kind}")

    return check


def _any(name: str) -> None:
    """Every name passes: the check for a loader that knows its own names."""


def registry_loader(settings: ServeSettings) -> Callable[[str], Any]:
    """name -> OnnxTranscriber for a transcription model of the registry. The Transcriber
    checks a name (registry_check) before Serve is asked to load it."""

    def load(name: str):
        from midiforge.registry import Registry
        from midiforge.transcription.runner import OnnxTranscriber

        model = Registry(settings.models_root).model_file(name)
        return OnnxTranscriber(
            model, batch_windows=settings.batch_windows, intra_op_threads=settings.threads
        )

    return load


class HeldModels:
    """The model names a replica holds, least recently used first, kept in step with Serve's
    multiplexed LRU: a request for a held model moves it to the end; a load at capacity
    first drops the least recently used, as Serve does before it calls the loader.

    `get` checks a name that is not held before asking Serve for it: Serve drops a model
    to make room before loading, so a name that cannot load would cost a held model."""

    def __init__(self, capacity: int, check: Callable[[str], None]) -> None:
        self.capacity = capacity
        self.check = check
        self.names: list[str] = []

    def loading(self) -> None:
        if len(self.names) >= self.capacity:
            del self.names[0]

    def used(self, name: str) -> None:
        self.names = [*[n for n in self.names if n != name], name][-self.capacity :]

    async def get(self, name: str, get_model: Callable[[str], Any]) -> Any:
        if name not in self.names:
            await asyncio.get_running_loop().run_in_executor(None, self.check, name)
        model = await get_model(name)
        self.used(name)
        return model


@serve.deployment
class Transcriber:
    """Holds up to 3 models per replica (LRU, by request) and batches concurrent clips."""

    def __init__(self, settings: dict[str, Any], loader: Callable[[str], Any] | None = None):
        self.settings = cfgmod.from_dict(ServeSettings, settings)
        self.loader = loader or registry_loader(self.settings)
        # An injected loader decides alone which names it knows.
        check = registry_check(self.settings.models_root, "transcriber") if loader is None else _any
        self.held = HeldModels(TRANSCRIBER_MODELS, check)
        self._run.set_max_batch_size(self.settings.batch_max_size)
        self._run.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=TRANSCRIBER_MODELS)
    async def get_model(self, model_id: str):
        self.held.loading()
        return await asyncio.get_running_loop().run_in_executor(None, self.loader, model_id)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)  # ServeSettings sets both
    async def _run(self, items: list[tuple[Any, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Clips of concurrent requests, grouped by model, each group in one model call."""
        results: list[dict[str, np.ndarray] | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (runner, _) in enumerate(items):
            groups.setdefault(id(runner), []).append(i)
        loop = asyncio.get_running_loop()
        for idx in groups.values():
            runner = items[idx[0]][0]
            # Off the event loop: onnxruntime releases the GIL, so the replica keeps taking
            # requests and decoding notes of the last batch while the model runs.
            outs = await loop.run_in_executor(None, runner, [items[i][1] for i in idx])
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return results  # type: ignore[return-value]

    async def transcribe(self, clip: np.ndarray, decoding: dict[str, float | None]) -> np.ndarray:
        from midiforge.transcription.notes import NoteDecoding, decode_notes

        model_id = serve.get_multiplexed_model_id() or self.settings.default_model
        runner = await self.held.get(model_id, self.get_model)
        out = await self._run((runner, clip))
        # Unset thresholds: the model's own calibrated ones (injected runners may have none).
        cfg = NoteDecoding(**decoding).resolve(getattr(runner, "decoding", None))
        return await asyncio.get_running_loop().run_in_executor(None, decode_notes, out, cfg)

    def models(self) -> list[str]:
        return list(self.held.names)


@serve.deployment
class Generation:
    """MIDI generation: the rule baseline or exported language models from the registry,
    up to 2 per replica (multiplexed by name), each on onnxruntime with its KV cache."""

    def __init__(self, settings: dict[str, Any]):
        from midiforge.lm.generate import RULES

        self.settings = cfgmod.from_dict(ServeSettings, settings)
        self.held = HeldModels(
            GENERATOR_MODELS, registry_check(self.settings.models_root, "lm", builtin=(RULES,))
        )

    @serve.multiplexed(max_num_models_per_replica=GENERATOR_MODELS)
    async def get_model(self, model_id: str):
        from midiforge.lm.generate import Generator

        self.held.loading()

        def load():
            return Generator.load(
                model_id, self.settings.models_root, threads=self.settings.threads
            )

        return await asyncio.get_running_loop().run_in_executor(None, load)

    async def generate(self, request: dict[str, Any]) -> bytes:
        from midiforge.lm.generate import GenerateRequest

        gen = await self.held.get(serve.get_multiplexed_model_id(), self.get_model)
        req = GenerateRequest(**request)
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(None, gen.generate, req)).midi

    def models(self) -> list[str]:
        return list(self.held.names)


@serve.deployment
class Classification:
    """/v1/classify: style classifiers from the registry, up to 2 per replica (multiplexed
    by name), each one onnxruntime session on its log-mel clips (no torch)."""

    def __init__(self, settings: dict[str, Any]):
        from midiforge.classifiers.style.classifier import KIND

        self.settings = cfgmod.from_dict(ServeSettings, settings)
        self.held = HeldModels(CLASSIFIER_MODELS, registry_check(self.settings.models_root, KIND))

    @serve.multiplexed(max_num_models_per_replica=CLASSIFIER_MODELS)
    async def get_model(self, model_id: str):
        from midiforge.classifiers.style.classifier import StyleClassifier, registry_model_dir

        self.held.loading()

        def load():
            # The registry only: a request's model name never names a folder on the replica.
            folder = registry_model_dir(model_id, self.settings.models_root)
            return StyleClassifier.load(folder, threads=self.settings.threads)

        return await asyncio.get_running_loop().run_in_executor(None, load)

    async def classify(self, clip: np.ndarray, top: int) -> list[tuple[str, float]]:
        from midiforge.audio import TRANSCRIPTION_SR

        clf = await self.held.get(serve.get_multiplexed_model_id(), self.get_model)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, clf.predict, clip, TRANSCRIPTION_SR, top)

    def models(self) -> list[str]:
        return list(self.held.names)


class GenerateBody(BaseModel):
    model: str | None = None  # default: the service's generator_model
    style: str = "fiddle"
    key: str = "D major"
    bpm: float = Field(120.0, ge=20, le=300)
    bars: int = Field(16, ge=1, le=256)
    temperature: float = Field(1.0, ge=0, le=5)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = 0
    time_signature: str = "4/4"
    prompt_midi: str | None = None  # base64 MIDI to continue
    programs: list[int] | None = None  # GM programs; default: the style's own


def _check_model_name(model: str) -> None:
    from midiforge.registry import RegistryError, validate_name

    try:
        validate_name(model)
    except RegistryError as e:
        raise RequestError(400, "invalid_model_name", str(e)) from None


async def _read_audio(
    audio: UploadFile, settings: ServeSettings, decodes: asyncio.Semaphore
) -> tuple[np.ndarray, float]:
    """An uploaded file -> read_upload's clip, a file over the size limit refused unread."""
    from starlette.concurrency import run_in_threadpool

    check_upload_size(audio.size or 0, settings)
    # One byte over the limit at most, so a part of unknown size is never read whole.
    data = await audio.read(settings.max_upload_bytes + 1)
    # Decoding and resampling a long file take seconds: off the event loop, so /healthz
    # and every other request keep being answered meanwhile. A few at a time: a 0.4 MB
    # FLAC may hold max_audio_seconds of 192 kHz stereo, ~0.75 GB while it is decoded.
    async with decodes:
        return await run_in_threadpool(read_upload, data, settings)


def registry_listing(root: str | None) -> dict[str, list[dict[str, str]]]:
    """/v1/models' registry part. A manifest that cannot be read is listed under
    `unreadable` with the reason, not the end of the listing."""
    from midiforge.registry import Registry, RegistryError

    reg = Registry(root)
    listed, unreadable = [], []
    for name in reg.names():
        try:
            m = reg.manifest(name)
        except (RegistryError, OSError) as e:
            unreadable.append({"name": name, "detail": str(e)})
            continue
        listed.append({"name": m.name, "kind": m.kind, "version": m.version})
    return {"models": listed, "unreadable": unreadable}


def _unwrap(e: Exception) -> Exception:
    """The exception a replica raised. It reaches the Gateway as a RayTaskError whose
    str() carries the remote traceback, process id and file paths, none of which belong
    in a response."""
    from ray.exceptions import RayTaskError

    if isinstance(e, RayTaskError) and isinstance(e.cause, Exception):
        return e.cause
    return e


async def _answer(call, timeout_s: float):
    """A deployment call under the per-request timeout (504); an unknown model is a 404.
    A replica's own exception is raised as itself, its message free of the traceback."""
    from midiforge.registry import RegistryError

    try:
        return await asyncio.wait_for(call, timeout_s)
    except TimeoutError:
        raise RequestError(504, "timeout", f"over {timeout_s:g} s") from None
    except Exception as e:
        cause = _unwrap(e)
        if isinstance(cause, RegistryError):
            raise RequestError(404, "unknown_model", str(cause)) from None
        if cause is e:
            raise
        raise cause from e


class BodyTooLarge(StarletteHTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413)


class BodyLimit:
    """Counts a request's body as it arrives and refuses it past `limit`: a body sent
    without a Content-Length (chunked) is held to the limit _auth applies to a declared
    one. Raised from the route's own body read, the 413 goes through the app's JSON error
    handler. (FastAPI's max_body_size would answer a declared length in plain text.)"""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        await self.app(scope, counted, send)


def _body_too_large(content_length: str, limit: int) -> bool:
    """Whether a request's declared length exceeds `limit`. An absent or malformed one is
    left to the server and to the upload's own checks."""
    if not (content_length.isascii() and content_length.isdigit()):
        return False
    # int() refuses thousands of digits, and 19 digits exceed any limit anyway.
    return len(content_length) > 18 or int(content_length) > limit


def _error(status: int, code: str, detail: str):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status, content={"error": code, "detail": detail})


def make_fastapi(settings: ServeSettings):
    """The HTTP surface: routes, auth, and JSON errors for every failure."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    body_limit = settings.max_upload_bytes + MULTIPART_SLACK_BYTES
    api = FastAPI(title="midiforge", version="0.1.0", description="Audio to MIDI on Ray Serve")
    api.add_middleware(BodyLimit, limit=body_limit)

    @api.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError):
        return _error(e.status, e.code, e.detail)

    @api.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        return _error(422, "invalid_request", str(e.errors()))

    @api.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException):
        if e.status_code == 413:
            return _error(413, "upload_too_large", f"request body over {body_limit} bytes")
        return _error(e.status_code, "http_error", str(e.detail))

    @api.middleware("http")
    async def _auth(request: Request, call_next):
        token = os.environ.get(settings.token_env)
        # The path under the app's route prefix (Serve's root_path), matched exactly.
        path = request.scope["path"].removeprefix(request.scope.get("root_path", ""))
        if token and path != "/healthz":
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return _error(401, "unauthorized", "missing or wrong bearer token")
        if _body_too_large(request.headers.get("content-length", ""), body_limit):
            # Refused before FastAPI parses the form, which would spool all of it first.
            return _error(413, "upload_too_large", f"request body over {body_limit} bytes")
        try:
            return await call_next(request)
        except Exception as e:  # a replica answers every request, even on a bug
            log.exception("unhandled error on %s", request.url.path)
            cause = _unwrap(e)
            return _error(500, "internal_error", f"{type(cause).__name__}: {cause}")

    return api


def build_app(
    args: dict[str, Any] | None = None,
    loader: Callable[[str], Any] | None = None,
    *,
    gateway_options: dict[str, Any] | None = None,
    transcriber_options: dict[str, Any] | None = None,
    generator_options: dict[str, Any] | None = None,
    classifier_options: dict[str, Any] | None = None,
):
    """The Serve application. `args` are ServeSettings fields; `loader` replaces the
    registry loader with any name -> model function; the options go to each deployment's
    `.options()` (serve/config.yaml sets them on a cluster)."""

    settings = cfgmod.from_dict(ServeSettings, dict(args or {}))
    api = make_fastapi(settings)

    @serve.deployment
    @serve.ingress(api)
    class Gateway:
        def __init__(self, transcriber, generator, classifier) -> None:
            self.transcriber = transcriber
            self.generator = generator
            self.classifier = classifier
            self.decodes = asyncio.Semaphore(settings.max_concurrent_decodes)

        @api.get("/healthz")
        async def healthz(self) -> dict:
            return {"status": "ok"}

        @api.get("/v1/models")
        async def models(self) -> dict:
            from starlette.concurrency import run_in_threadpool

            # Manifests (and stock's hash) are read off the event loop: on s3:// that
            # takes round trips that would hold up every other request, /healthz too.
            registry = await run_in_threadpool(registry_listing, settings.models_root)
            # "loaded" is what the replica that answered holds; each replica has its own.
            return {
                "transcriber": {"loaded": await self.transcriber.models.remote()},
                "generator": {
                    "default": settings.generator_model,
                    "loaded": await self.generator.models.remote(),
                },
                "classifier": {
                    "default": settings.classifier_model,
                    "loaded": await self.classifier.models.remote(),
                },
                "registry": registry["models"],
                "registry_unreadable": registry["unreadable"],
            }

        @api.post("/v1/transcribe")
        async def transcribe(  # noqa: PLR0917 - FastAPI maps each query parameter by name
            self,
            audio: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
            model: str = Query(settings.default_model),
            format: str = Query("midi", pattern="^(midi|json)$"),
            # None: the model's calibrated threshold (its decoding.yaml; 0.5 / 0.3 / 127.7
            # ms for stock, basic-pitch's defaults).
            onset_threshold: float | None = Query(None, gt=0, lt=1),
            frame_threshold: float | None = Query(None, gt=0, lt=1),
            # At most 10 s: a longer floor drops every note of real music, and a bound
            # keeps inf (or 1e309) a 422 instead of an overflow in frame counting.
            min_note_ms: float | None = Query(None, ge=0, le=10_000),
        ):
            _check_model_name(model)
            clip, seconds = await _read_audio(audio, settings, self.decodes)
            decoding = {
                "onset_threshold": onset_threshold,
                "frame_threshold": frame_threshold,
                "minimum_note_ms": min_note_ms,
            }
            handle = self.transcriber.options(multiplexed_model_id=model)
            notes = await _answer(
                handle.transcribe.remote(clip, decoding), settings.request_timeout_s
            )
            if format == "json":
                return notes_json(model, seconds, notes)
            return Response(notes_midi(notes), media_type="audio/midi")

        @api.post("/v1/classify")
        async def classify(
            self,
            audio: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
            model: str | None = Query(None),
            top: int = Query(3, ge=1, le=20),
        ):
            from midiforge.classifiers.style.classifier import StyleInputError, StyleModelError

            model = model or settings.classifier_model
            if not model:
                raise RequestError(
                    503,
                    "not_configured",
                    "no style classifier is configured: set classifier_model in "
                    "serve/config.yaml (a registry name, e.g. after `midiforge sweep style`), "
                    "or name one with ?model=",
                )
            _check_model_name(model)
            clip, seconds = await _read_audio(audio, settings, self.decodes)
            handle = self.classifier.options(multiplexed_model_id=model)
            try:
                call = handle.classify.remote(clip, top)
                styles = await _answer(call, settings.request_timeout_s)
            except StyleModelError as e:
                raise RequestError(404, "unknown_model", str(e)) from None
            except StyleInputError as e:
                raise RequestError(422, e.reason, e.detail) from None
            return {
                "model": model,
                "duration_s": round(seconds, 4),
                "styles": [{"style": s, "probability": round(float(p), 6)} for s, p in styles],
            }

        @api.post("/v1/generate")
        async def generate(self, body: GenerateBody | None = None):
            import base64
            import binascii

            from midiforge.lm.generate import GenerateError

            body = body or GenerateBody()
            model = body.model or settings.generator_model
            if not model:
                raise RequestError(
                    503,
                    "not_configured",
                    "no generator is configured: set generator_model in serve/config.yaml, "
                    'or name one in the request ("model": "rules" is the rule baseline)',
                )
            _check_model_name(model)
            request = body.model_dump(exclude={"model"})
            if body.prompt_midi:
                try:
                    request["prompt_midi"] = base64.b64decode(body.prompt_midi, validate=True)
                except (binascii.Error, ValueError):
                    raise RequestError(400, "invalid_prompt", "prompt_midi is not base64") from None
            handle = self.generator.options(multiplexed_model_id=model)
            try:
                midi = await _answer(handle.generate.remote(request), settings.request_timeout_s)
            except (GenerateError, ValueError) as e:
                raise RequestError(422, "invalid_request", str(e)) from None
            return Response(midi, media_type="audio/midi")

    settings_dict = dict(args or {})
    transcriber = Transcriber.options(**(transcriber_options or {})).bind(settings_dict, loader)
    generator = Generation.options(**(generator_options or {})).bind(settings_dict)
    classifier = Classification.options(**(classifier_options or {})).bind(settings_dict)
    return Gateway.options(**(gateway_options or {})).bind(transcriber, generator, classifier)
