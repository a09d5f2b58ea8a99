"""The request core shared by both front doors; imports neither grpc nor an HTTP framework.

Protocol-neutral by construction: a door hands it a ``GenerateRequest`` (the
contract's message, built from the wire by that door) and a way to read its
client's deadline, and renders the flushes it gets back. Errors are the domain's
(``errors.py``); each door maps them through the one table there.
"""
