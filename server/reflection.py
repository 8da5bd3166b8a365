"""gRPC server reflection, v1 and v1alpha, from descriptors ringd controls.

grpcio-reflection's servicer answers from the Python protobuf pool, which cannot find
the file of a method name (``ringd.v1.PluginEngineService.ExecuteRing``): ``grpcurl
describe`` on a method and ``ghz --call`` fail with "Symbol not found". It also serves
descriptors without the proto's comments, and only ``grpc.reflection.v1alpha``.

This servicer answers from an index of serialized ``FileDescriptorProto``s instead:

- ringd's contract comes from ``ringd/v1/descriptor_set.binpb``, which ``make proto``
  writes with ``--include_source_info`` (drift-checked like the stubs), so ``describe``
  prints each field's documentation;
- the health and reflection protos come from their generated modules;
- every symbol a file defines is indexed: messages (nested too), fields, oneofs, enums,
  enum values, services and methods.

Both ``grpc.reflection.v1.ServerReflection`` and ``grpc.reflection.v1alpha.ServerReflection``
are served; their messages are the same on the wire (only the package differs), so one
implementation answers both.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

_log = logging.getLogger("ringd.server.reflection")

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
REFLECTION_V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_SERVICES = (REFLECTION_V1, REFLECTION_V1ALPHA)
DESCRIPTOR_SET = "descriptor_set.binpb"

_Request = reflection_pb2.ServerReflectionRequest
_Response = reflection_pb2.ServerReflectionResponse


class DescriptorIndex:
    """Serialized ``FileDescriptorProto``s by file name, and the file of every symbol."""

    def __init__(self) -> None:
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self._serialized: dict[str, bytes] = {}
        self._symbols: dict[str, str] = {}
        self._extensions: dict[tuple[str, int], str] = {}

    def add(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        """Index ``file``; a file already indexed under its name is kept (the first wins)."""
        if file.name in self._files:
            return
        self._files[file.name] = file
        self._serialized[file.name] = file.SerializeToString(deterministic=True)
        scope = file.package
        for message in file.message_type:
            self._add_message(message, scope, file.name)
        for enum in file.enum_type:
            self._add_enum(enum, scope, file.name)
        for extension in file.extension:
            self._add_extension(extension, scope, file.name)
        for service in file.service:
            service_name = _join(scope, service.name)
            self._symbols[service_name] = file.name
            for method in service.method:
                self._symbols[f"{service_name}.{method.name}"] = file.name

    def add_descriptor_set(self, data: bytes) -> None:
        """Index every file of a serialized ``FileDescriptorSet``."""
        files = descriptor_pb2.FileDescriptorSet.FromString(data)
        for file in files.file:
            self.add(file)

    def add_generated(self, file: FileDescriptor) -> None:
        """Index a generated module's file (``xxx_pb2.DESCRIPTOR``) and its imports."""
        for dependency in file.dependencies:
            self.add_generated(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        self.add(proto)

    def _add_message(self, message: descriptor_pb2.DescriptorProto, scope: str, file: str) -> None:
        name = _join(scope, message.name)
        self._symbols[name] = file
        for field in message.field:
            self._symbols[f"{name}.{field.name}"] = file
        for oneof in message.oneof_decl:
            self._symbols[f"{name}.{oneof.name}"] = file
        for nested in message.nested_type:
            self._add_message(nested, name, file)
        for enum in message.enum_type:
            self._add_enum(enum, name, file)
        for extension in message.extension:
            self._add_extension(extension, name, file)

    def _add_enum(self, enum: descriptor_pb2.EnumDescriptorProto, scope: str, file: str) -> None:
        self._symbols[_join(scope, enum.name)] = file
        for value in enum.value:  # enum values live in the enum's enclosing scope (C++ rules)
            self._symbols[_join(scope, value.name)] = file

    def _add_extension(self, extension: descriptor_pb2.FieldDescriptorProto, scope: str, file: str) -> None:
        self._symbols[_join(scope, extension.name)] = file
        self._extensions[(extension.extendee.lstrip("."), extension.number)] = file

    def file(self, name: str) -> descriptor_pb2.FileDescriptorProto | None:
        """The indexed file called ``name``, or None."""
        return self._files.get(name)

    def file_of_symbol(self, symbol: str) -> str | None:
        """The name of the file that defines ``symbol`` (a leading dot is allowed), or None."""
        return self._symbols.get(symbol.lstrip("."))

    def file_of_extension(self, containing_type: str, number: int) -> str | None:
        return self._extensions.get((containing_type.lstrip("."), number))

    def extension_numbers(self, containing_type: str) -> list[int]:
        wanted = containing_type.lstrip(".")
        return sorted(number for (extendee, number) in self._extensions if extendee == wanted)

    def with_imports(self, name: str) -> list[bytes]:
        """The serialized file ``name`` first, then every file it imports, transitively."""
        order: list[str] = []
        pending = [name]
        while pending:
            current = pending.pop()
            if current in order or current not in self._files:
                continue
            order.append(current)
            pending.extend(reversed(self._files[current].dependency))
        return [self._serialized[file] for file in order]


def _join(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


def _reflection_v1_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``, made from the v1alpha file grpcio ships.

    The two files define the same messages and service with the same field numbers;
    only the package (and the file's name) differ.
    """
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    old, new = f".{alpha.package}.", ".grpc.reflection.v1."
    file = descriptor_pb2.FileDescriptorProto()
    file.CopyFrom(alpha)
    file.name = "grpc/reflection/v1/reflection.proto"
    file.package = "grpc.reflection.v1"
    file.ClearField("options")
    for message in file.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name.removeprefix(old)
    for service in file.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    return file


def ringd_descriptor_set() -> bytes:
    """The committed descriptor set of the ``ringd.v1`` contract (with its comments)."""
    return resources.files("ringd.v1").joinpath(DESCRIPTOR_SET).read_bytes()


def default_index() -> DescriptorIndex:
    """ringd's contract (with comments), health, and both reflection versions."""
    index = DescriptorIndex()
    index.add_descriptor_set(ringd_descriptor_set())
    index.add_generated(health_pb2.DESCRIPTOR)
    index.add_generated(reflection_pb2.DESCRIPTOR)
    index.add(_reflection_v1_file())
    return index


class ReflectionServicer:
    """Answers ``ServerReflectionInfo`` streams from a :class:`DescriptorIndex`."""

    def __init__(self, services: Iterable[str], index: DescriptorIndex) -> None:
        self._services = tuple(sorted({*services, *REFLECTION_SERVICES}))
        self._index = index
        for service in self._services:
            if index.file_of_symbol(service) is None:
                raise ValueError(f"reflection: no descriptor for service {service!r}")

    def answer(self, request: Any) -> Any:
        """The response to one request of the stream."""
        kind = request.WhichOneof("message_request")
        index = self._index
        if kind == "list_services":
            return _Response(
                original_request=request,
                list_services_response=reflection_pb2.ListServiceResponse(
                    service=[reflection_pb2.ServiceResponse(name=name) for name in self._services]
                ),
            )
        if kind == "file_by_filename":
            if index.file(request.file_by_filename) is None:
                return _not_found(request, f"no file {request.file_by_filename!r}")
            return _files(request, index.with_imports(request.file_by_filename))
        if kind == "file_containing_symbol":
            file = index.file_of_symbol(request.file_containing_symbol)
            if file is None:
                return _not_found(request, f"symbol not found: {request.file_containing_symbol}")
            return _files(request, index.with_imports(file))
        if kind == "file_containing_extension":
            wanted = request.file_containing_extension
            file = index.file_of_extension(wanted.containing_type, wanted.extension_number)
            if file is None:
                return _not_found(
                    request, f"no extension {wanted.extension_number} of {wanted.containing_type}"
                )
            return _files(request, index.with_imports(file))
        if kind == "all_extension_numbers_of_type":
            type_name = request.all_extension_numbers_of_type
            if index.file_of_symbol(type_name) is None:
                return _not_found(request, f"type not found: {type_name}")
            return _Response(
                original_request=request,
                all_extension_numbers_response=reflection_pb2.ExtensionNumberResponse(
                    base_type_name=type_name.lstrip("."),
                    extension_number=index.extension_numbers(type_name),
                ),
            )
        return _Response(
            original_request=request,
            error_response=reflection_pb2.ErrorResponse(
                error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                error_message="the request names no reflection query",
            ),
        )

    async def _info(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            yield self.answer(request)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """One generic handler per reflection version, for ``server.add_generic_rpc_handlers``."""
        method = grpc.stream_stream_rpc_method_handler(
            self._info,
            request_deserializer=_Request.FromString,
            response_serializer=_Response.SerializeToString,
        )
        return [
            grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": method})
            for service in REFLECTION_SERVICES
        ]


def _files(request: Any, files: Sequence[bytes]) -> Any:
    return _Response(
        original_request=request,
        file_descriptor_response=reflection_pb2.FileDescriptorResponse(file_descriptor_proto=list(files)),
    )


def _not_found(request: Any, message: str) -> Any:
    _log.debug("reflection: %s", message)
    return _Response(
        original_request=request,
        error_response=reflection_pb2.ErrorResponse(
            error_code=grpc.StatusCode.NOT_FOUND.value[0], error_message=message
        ),
    )


def enable_reflection(services: Iterable[str], server: grpc.aio.Server, index: DescriptorIndex) -> None:
    """Serve reflection v1 and v1alpha on ``server``, listing ``services`` and themselves."""
    server.add_generic_rpc_handlers(tuple(ReflectionServicer(services, index).handlers()))
