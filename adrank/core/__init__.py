"""adrank's core, the ground floor every role stands on: the schema, the preprocessing (raw value ->
feature id) and its stable hash, the artifact format (writer, reader, validator), bit packing,
atomic files and the user-facing error.  It imports only numpy, numba and the standard library,
never a package above it (service, training, exporter, the CLI): an import contract checks it.
"""
