package s3server

import "syscall"

// procAttr makes the kernel kill the gateway when the process that started
// it dies, so a killed test or benchmark leaves no gateway behind.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
