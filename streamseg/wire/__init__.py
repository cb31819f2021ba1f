"""The wire layer: what crosses a ZeroMQ socket, and the sockets. One concern per module.

The protocol (pure: no zmq; docs/protocol.md):
    messages     the message dataclasses (StreamStart, Frame, Detections, EndOfStream, Stats,
                 Credit, Assign) and PROTOCOL_VERSION
    results      the results format: Instance, Result (a results-file line, a published result)
    codec        encode / decode the envelope ([header, *buffers]; published: [topic, ...])
    validation   the content checks of each message type (check_contents)
    fields       ProtocolError and the checks of single values (check_name, check_int, ...)
    previews     the live view's JPEG messages (Preview)

The transport (sockets, security and receiver are the only modules that import zmq):
    sockets      sockets with bounded queues, send / publish, close_all
    security     which binds need keys (endpoint policy), CURVE on sockets and ZAP (Security)
    receiver     Receiver: decode, apply an accept policy, count and log what is refused
    curve        CURVE key files: write and read them, Security from them
"""
