//go:build !linux

package s3server

import "syscall"

func procAttr() *syscall.SysProcAttr { return nil }
