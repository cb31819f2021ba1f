"""The page at `/`: every stream's live view and figures, refreshed every second. No build step,
no external files: one HTML document with a little script that reads /api/state."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>streamseg</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 16px; background: #111; color: #ddd; }
  h1 { font-size: 18px; margin: 0 0 12px; }
  #health { margin-left: 12px; font-size: 14px; }
  .ok { color: #5c5; } .bad { color: #f66; }
  #streams { display: flex; flex-wrap: wrap; gap: 16px; }
  .card { background: #1c1c1c; border-radius: 6px; padding: 10px; width: 480px;
          max-width: 100%; box-sizing: border-box; }
  .card img { width: 100%; background: #000; display: block; min-height: 120px; }
  .name { font-weight: 600; font-size: 16px; }
  .state { float: right; padding: 1px 8px; border-radius: 10px; font-size: 12px; }
  .connected { background: #264d26; } .reconnecting, .starting { background: #5a4a14; }
  .lost { background: #5a1c1c; } .ended { background: #333; }
  .figures { margin-top: 6px; font-variant-numeric: tabular-nums; color: #bbb; }
  .rtsp { margin-top: 4px; color: #8ab4f8; font-family: monospace; user-select: all; }
  a { color: #8ab4f8; }
</style>
</head>
<body>
<h1>streamseg <span id="health"></span></h1>
<div id="streams"></div>
<p><a href="/metrics">metrics</a> · <a href="/healthz">healthz</a> ·
   <a href="/api/state">state (JSON)</a></p>
<script>
"use strict";
const cards = {};
function fmt(x, digits) { return x === null || x === undefined ? "–" : x.toFixed(digits); }
function card(name) {
  if (cards[name]) return cards[name];
  const div = document.createElement("div");
  div.className = "card";
  div.innerHTML = '<span class="state"></span><div class="name"></div>' +
    '<img alt="live view"><div class="figures"></div><div class="rtsp"></div>';
  div.querySelector(".name").textContent = name;
  div.querySelector("img").src = "/view/" + encodeURIComponent(name);
  document.getElementById("streams").appendChild(div);
  return (cards[name] = div);
}
async function refresh() {
  try {
    const state = await (await fetch("/api/state", {cache: "no-store"})).json();
    const health = document.getElementById("health");
    health.textContent = state.healthy ? "healthy" : "not healthy: " + state.problems.join("; ");
    health.className = state.healthy ? "ok" : "bad";
    for (const [name, s] of Object.entries(state.streams)) {
      const div = card(name);
      const badge = div.querySelector(".state");
      badge.textContent = s.state;
      badge.className = "state " + s.state;
      div.querySelector(".figures").textContent =
        `in ${fmt(s.fps_in, 1)} fps · processed ${fmt(s.fps_out, 1)} fps · ` +
        `latency p50 ${fmt(s.latency_p50_ms, 0)} ms p99 ${fmt(s.latency_p99_ms, 0)} ms · ` +
        `dropped ${s.dropped} · reconnects ${s.reconnects}`;
      div.querySelector(".rtsp").textContent = s.rtsp ? "RTSP: " + s.rtsp : "";
    }
  } catch (e) {
    const health = document.getElementById("health");
    health.textContent = "run ended (no answer)";
    health.className = "bad";
  }
}
// Live views start after the page loaded, so the page's load never waits on an endless stream.
window.addEventListener("load", () => { refresh(); setInterval(refresh, 1000); });
</script>
</body>
</html>
"""
