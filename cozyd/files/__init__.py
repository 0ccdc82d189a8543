"""The virtual file system of an instance: ``io.cozy.files`` documents
(directories and files, through the document layer), their contents on the
local disk (``ContentStore``), and the checks of access, names and quota.

See docs/files.md.
"""
