"""petcd's HTTP endpoints (etcd's embed/serve.go and etcdserver/api/etcdhttp): the grpc-gateway
JSON API, /health, /livez, /readyz, /version and /metrics.

grpcio cannot share a port with HTTP/1.1, so, like etcd 3.5+ with --listen-client-http-urls,
they are served on their own listeners: http_server.HttpServers starts one aiohttp site per
--listen-client-http-urls URL (everything) and per --listen-metrics-urls URL (/metrics and the
health endpoints only).
"""
