// Command pause is the e2e cluster's sandbox image: it sleeps until it is
// told to stop (a static Go binary; no registry is reachable here).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
