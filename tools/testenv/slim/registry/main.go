// The CNCF Distribution registry with only the filesystem storage driver the test node uses:
// the release build links the S3, Azure and GCS drivers with their SDKs.
package main

import (
	"github.com/distribution/distribution/v3/registry"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
)

func main() {
	_ = registry.RootCmd.Execute()
}
