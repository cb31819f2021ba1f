"""`--serve`: the run seen from a browser and from Prometheus, hosted by the supervisor.

Pure cores (`window`: rates and percentiles over the last seconds; `health`: the /healthz rule;
`metrics`: Prometheus families from the stages' reports) beside thin edges (`views`: the live
JPEG previews from postprocess; `http`: the HTTP server; `page`: the page at `/`).
"""
