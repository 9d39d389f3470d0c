//go:build tools

// Package tools pins the etcd server the Kubernetes control plane of the tests stores its
// objects in: a 3.6 release, as Kubernetes documents.
package tools

import _ "go.etcd.io/etcd/server/v3"
