"""``selfsup-serve``: a development server speaking TensorFlow Serving's REST API.

Production serving is TensorFlow Serving; with docker, for a model exported to <base>/<name>/:

    docker run -p 8501:8501 -v <base>/<name>:/models/<name> -e MODEL_NAME=<name> \\
        tensorflow/serving

This server is for development and tests: it serves the same layout
(<model_base_path>/<integer version>/saved_model.pb, newest version by default, any version on
request) with the same REST API on 127.0.0.1:8501 by default:

    selfsup-serve --model_name=rotnet --model_base_path=exports/rotnet
    curl localhost:8501/v1/models/rotnet            # version status
    curl localhost:8501/v1/models/rotnet/metadata   # signatures
    curl -d '{"instances": [[[[0, 0, 0], ...]]]}' localhost:8501/v1/models/rotnet:predict
    curl -d '{"signature_name": "serving_bytes", "instances": [{"b64": "<PNG as base64>"}]}' \\
        localhost:8501/v1/models/rotnet/versions/1:predict

Several models: --model_config=name=base_path, repeated. Mistakes the user can fix print one
line on stderr and exit with status 2.
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys

from absl import app, flags

from selfsup.export.cli import one_line_flag_parser, usage_error

PROGRAM = "selfsup-serve"

DEFAULT_PORT = 8501
DEFAULT_MAX_REQUEST_MB = 64

FLAGS = flags.FLAGS
_FLAG_NAMES = ("model_name", "model_base_path", "model_config", "host", "port", "max_request_mb")


def define_flags() -> None:
    """Defines this program's flags (at run time, so importing this module defines none)."""
    if "model_base_path" in FLAGS:
        return
    flags.DEFINE_string("model_name", None,
                        "Served model name, the <name> in /v1/models/<name> "
                        "(default: the base path's directory name).")
    flags.DEFINE_string("model_base_path", None,
                        "Directory holding <integer version>/saved_model.pb, like TF Serving's "
                        "--model_base_path (docker: /models/$MODEL_NAME).")
    flags.DEFINE_multi_string("model_config", [],
                              "More models as name=base_path (repeatable).")
    flags.DEFINE_string("host", "127.0.0.1",
                        "Address to bind (127.0.0.1: this machine only; this is a development "
                        "server, use TensorFlow Serving in production).")
    flags.DEFINE_integer("port", DEFAULT_PORT, "REST port (TF Serving's default is 8501).",
                         lower_bound=0, upper_bound=65535)
    flags.DEFINE_integer("max_request_mb", DEFAULT_MAX_REQUEST_MB,
                         "Requests with larger bodies are refused with 413.", lower_bound=1)


def model_base_paths(model_name: str | None, model_base_path: str | None,
                     model_configs: list[str]) -> dict[str, str]:
    """The served models, name → base path, from the flags.

    Raises ``app.UsageError`` (one line) for a missing or malformed flag or a base path that is
    not a directory; checked without importing TensorFlow, so these mistakes show at once.
    Model names and versions are checked by :class:`~selfsup.export.rest_server.ModelRepository`.
    """
    models: dict[str, str] = {}
    if model_base_path:
        models[model_name or os.path.basename(os.path.normpath(model_base_path))] = \
            model_base_path
    elif model_name:
        raise app.UsageError("--model_name needs --model_base_path")
    for entry in model_configs:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--model_config={entry} must be name=base_path")
        if name in models:
            raise app.UsageError(f"model {name!r} is given twice")
        models[name] = path
    if not models:
        raise app.UsageError("give --model_base_path (and --model_name) or "
                             "--model_config=name=base_path")
    for name, path in models.items():
        if not os.path.isdir(path):
            raise app.UsageError(f"base path {path} of model {name!r} is not a directory")
    return models


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return usage_error(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        models = model_base_paths(FLAGS.model_name, FLAGS.model_base_path, FLAGS.model_config)
    except app.UsageError as error:
        return usage_error(PROGRAM, str(error))

    from werkzeug.serving import make_server

    from selfsup.export.rest_server import ModelRepository, create_app
    from selfsup.models.registry import ConfigError

    try:
        repository = ModelRepository(models)
        server = make_server(FLAGS.host, FLAGS.port,
                             create_app(repository, FLAGS.max_request_mb * 1024 * 1024),
                             threaded=True)
    except ConfigError as error:
        return usage_error(PROGRAM, str(error))
    except OSError as error:  # Port in use, address not available.
        return usage_error(PROGRAM,
                           f"cannot listen on {FLAGS.host}:{FLAGS.port}: {error.strerror}")
    address = f"http://{FLAGS.host}:{server.server_port}"
    for name in repository.base_paths:
        print(f"serving {name} versions {repository.versions(name)} at "
              f"{address}/v1/models/{name} (development server; production: TensorFlow "
              "Serving)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def run() -> None:
    """Console-script entry point."""
    define_flags()
    # --help prints __main__'s docstring: a console-script wrapper has none, so lend it ours.
    main_module = sys.modules["__main__"]
    if not main_module.__doc__:
        main_module.__doc__ = __doc__
    # --help lists the key flags of the module named by argv[0] (the wrapper, for a script).
    for name in _FLAG_NAMES:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    app.run(main, flags_parser=one_line_flag_parser(PROGRAM))


if __name__ == "__main__":
    run()
