"""Scenarios written once against tests/framework's Member and Client (etcd's tests/common): the
unit tier runs them in process, the integration tier against petcd and etcd processes."""
