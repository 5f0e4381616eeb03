"""The Eclipse Tahu ``sparkplug_b.proto``, generated for Python, as the pysparkplug package ships it.

Only the generated module is used: pysparkplug's own package imports its paho-mqtt 1 client, which cannot live
beside aiomqtt's paho-mqtt 2, so it is installed without its dependencies (``scripts/setup.sh``,
``requirements-sparkplug.txt``) and ``_protobuf/sparkplug_b_pb2.py`` is loaded from its folder under a private
name, without running the package's ``__init__``. Loaded once per process: the module registers
``sparkplug_b.proto`` in protobuf's default descriptor pool.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

_NAME = "gateway._sparkplug_b_pb2"
_MISSING = ("Sparkplug B needs the Tahu protobuf module that pysparkplug ships: run scripts/setup.sh (it installs "
            "requirements-sparkplug.txt)")


class ProtoMissing(RuntimeError):
    """The generated module (or the protobuf runtime) is not installed."""


def module() -> ModuleType:
    """The generated ``sparkplug_b_pb2`` module (``Payload``, ``DataType``)."""
    loaded = sys.modules.get(_NAME)
    if loaded is not None:
        return loaded
    try:
        spec = importlib.util.find_spec("pysparkplug")
    except (ImportError, ValueError):
        spec = None
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next((Path(f) / "_protobuf" / "sparkplug_b_pb2.py" for f in folders
                 if (Path(f) / "_protobuf" / "sparkplug_b_pb2.py").is_file()), None)
    if path is None:
        raise ProtoMissing(_MISSING)
    file_spec = importlib.util.spec_from_file_location(_NAME, path)
    if file_spec is None or file_spec.loader is None:
        raise ProtoMissing(_MISSING)
    generated = importlib.util.module_from_spec(file_spec)
    sys.modules[_NAME] = generated
    try:
        file_spec.loader.exec_module(generated)
    except ImportError as exc:  # the protobuf runtime itself is missing
        del sys.modules[_NAME]
        raise ProtoMissing(f"{_MISSING}: {exc}") from exc
    except BaseException:
        del sys.modules[_NAME]
        raise
    return generated


def payload_class() -> Any:
    """``org.eclipse.tahu.protobuf.Payload``."""
    return module().Payload


def datatype(name: str) -> int:
    """A ``DataType`` enum value by its name in the proto (``"Int64"``, ``"Boolean"``...)."""
    return int(module().DataType.Value(name))
