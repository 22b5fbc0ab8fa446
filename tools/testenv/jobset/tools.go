//go:build tools

// Package tools pins what the JobSet controller's main package (sigs.k8s.io/jobset, built
// with `go build sigs.k8s.io/jobset`) imports, so that `go mod tidy` keeps their sums.
package tools

import (
	_ "k8s.io/apiserver/pkg/util/feature"
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	_ "sigs.k8s.io/controller-runtime"
	_ "sigs.k8s.io/controller-runtime/pkg/healthz"
	_ "sigs.k8s.io/controller-runtime/pkg/log/zap"
	_ "sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	_ "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	_ "sigs.k8s.io/jobset/pkg/config"
	_ "sigs.k8s.io/jobset/pkg/controllers"
	_ "sigs.k8s.io/jobset/pkg/features"
	_ "sigs.k8s.io/jobset/pkg/metrics"
	_ "sigs.k8s.io/jobset/pkg/util/cert"
	_ "sigs.k8s.io/jobset/pkg/util/tlsconfig"
	_ "sigs.k8s.io/jobset/pkg/util/useragent"
	_ "sigs.k8s.io/jobset/pkg/version"
	_ "sigs.k8s.io/jobset/pkg/webhooks"
)
