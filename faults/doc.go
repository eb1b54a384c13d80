// Package faults holds quorumkv's fault suite: tests that break things on
// purpose and check what the store promises when they break. It has no
// non-test code. Run all of it with
//
//	go test -race -count=1 ./faults/
//
// (CI runs all of it, as part of go test -race ./...); -short runs a
// quicker subset for local iteration. docs/RELIABILITY.md lists each fault,
// each checker, and the figures from the last full run.
package faults
