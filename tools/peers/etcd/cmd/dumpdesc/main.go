// dumpdesc writes the FileDescriptorSet that etcd's own Go API packages register (rpc.proto,
// kv.proto, auth.proto) to stdout, so petcd's tests can check that its hand-written .proto files
// are wire-compatible with etcd's: same packages, services, methods, messages, fields and numbers.
package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"

	"github.com/golang/protobuf/proto"
	descpb "github.com/golang/protobuf/protoc-gen-go/descriptor"

	_ "go.etcd.io/etcd/api/v3/authpb"
	_ "go.etcd.io/etcd/api/v3/etcdserverpb"
	_ "go.etcd.io/etcd/api/v3/mvccpb"
)

func main() {
	set := &descpb.FileDescriptorSet{}
	for _, name := range []string{"rpc.proto", "kv.proto", "auth.proto"} {
		gz := proto.FileDescriptor(name)
		r, err := gzip.NewReader(bytes.NewReader(gz))
		if err != nil {
			panic(err)
		}
		raw, err := io.ReadAll(r)
		if err != nil {
			panic(err)
		}
		fd := &descpb.FileDescriptorProto{}
		if err := proto.Unmarshal(raw, fd); err != nil {
			panic(err)
		}
		set.File = append(set.File, fd)
	}
	out, err := proto.Marshal(set)
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(out)
}
