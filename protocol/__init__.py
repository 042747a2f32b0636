"""Wire protocols shared by server, client and exporter: .proto files, their generated stubs
(regenerate with `make proto`), and the brpc baidu_std codec."""
