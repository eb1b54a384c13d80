// Package faults holds quorumkv's fault suite: tests that break things on
// purpose and check what the store promises when they break. It has no
// non-test code. Run all of it with
//
//	go test -race -count=1 ./faults/
//
// and the quick subset CI runs with -short. docs/RELIABILITY.md lists each
// fault, each checker, and the figures from the last full run.
package faults
