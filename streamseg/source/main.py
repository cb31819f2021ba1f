"""Source stage process: one per stream; decodes and sends stamped frames to inference.

Each frame goes out stamped (stream, frame, pts, wall_time). Files go through `file`, RTSP
streams and cameras through `live` (reconnects, watchdog); both end with an end-of-stream.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from streamseg.accounting import Counters
from streamseg.source import decode
from streamseg.source.file import run_file
from streamseg.source.live import run_live, send_live
from streamseg.source.spec import SourceError, SourceSpec
from streamseg.stage.args import SourceArgs
from streamseg.stage.links import Links
from streamseg.stage.shell import run_stage_loop, setup_process
from streamseg.stage.trust import source_name
from streamseg.wire import sockets
from streamseg.wire.messages import EndOfStream

log = logging.getLogger(__name__)


def main(args: SourceArgs) -> int:
    """Source process: 0 when every frame was sent, 3 when frames were lost, 2 when unreadable.
    `args.stay`: after the end-of-stream, wait to be stopped (SIGTERM) instead of exiting at
    once (supervised runs: see below)."""
    stream = args.stream
    setup_process(f"source[{stream}]", verbose=args.verbose)
    decode.set_threads(args.decode_threads)
    spec = SourceSpec(stream, args.source, args.kind, args.hwdecode)
    counters = Counters()
    counters[stream]  # report the stream even if it never yields a frame
    links = Links.from_env(
        source_name(stream), link_keys=args.link_keys, stats_endpoint=args.stats_endpoint
    )
    reporter = links.reporter(counters)
    reporter.start_heartbeat()
    reporter.ready()  # a source has nothing to load; its own watchdog handles slow streams
    # Short queues: enough to keep the model fed, few enough that a frame waits little
    sock = sockets.push(
        args.frames_endpoint, hwm=2, security=links.security(args.frames_endpoint, bind=False)
    )

    def send(msg: Any, block: bool = True) -> bool:
        return links.send(sock, msg, block=block)

    def loop() -> int:
        try:
            if args.kind != "file":
                eos = run_live(
                    spec,
                    send,
                    counters,
                    reporter,
                    first_frame=args.first_frame,
                    first_pts=args.first_pts,
                    stall_s=args.stall_s,
                    retry_max_s=args.retry_max_s,
                    give_up_s=args.give_up_s,
                )
            elif args.live:  # a file standing in for a camera: paced, and frames never wait
                eos = run_file(
                    spec, lambda m: send_live(send, m), counters, reporter, realtime=True
                )
            else:
                eos = run_file(spec, send, counters, reporter, realtime=args.realtime)
        except SourceError as e:
            log.error("%s", e)
            send(EndOfStream(stream, 0, str(e), True))
            reporter.extra["error"] = str(e)
            return 2
        if eos.error:
            log.warning("%s: %s", stream, eos.error)
        return 3 if eos.lost else 0

    def loop_then_stay() -> int:
        code = loop()
        if args.stay:
            # libzmq can lose the last messages of a PUSH socket that closes while its peer is
            # not reading (seen: the last frame and the end-of-stream of a 120-frame file, every
            # time, at HWM 4). So the source stays connected until the supervisor, which knows
            # the end-of-stream went through (inference ended), stops it.
            try:  # (a stop may come at any moment from now on: never a traceback, same code)
                reporter.ended = True
                reporter.report_now()
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return code

    return run_stage_loop(loop_then_stay, reporter, abort=args.stay)
