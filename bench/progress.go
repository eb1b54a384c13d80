package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progress draws a one-line progress bar on a terminal (redrawn in place),
// or prints one line per finished step elsewhere.
type progress struct {
	w       io.Writer
	tty     bool
	start   time.Time
	total   int           // cells planned
	perCell time.Duration // expected time of one cell, for the ETA

	mu    sync.Mutex
	done  int
	label string
	frac  float64 // of the current step, when known
	stop  chan struct{}
	wg    sync.WaitGroup
}

func newProgress(w io.Writer, total int, perCell time.Duration) *progress {
	p := &progress{w: w, start: time.Now(), total: total, perCell: perCell, stop: make(chan struct{})}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	if p.tty {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			t := time.NewTicker(200 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-p.stop:
					return
				case <-t.C:
					p.draw()
				}
			}
		}()
	}
	return p
}

// step starts a new step (setup, preload or cell).
func (p *progress) step(format string, args ...any) {
	p.mu.Lock()
	p.label, p.frac = fmt.Sprintf(format, args...), -1
	label := p.label
	p.mu.Unlock()
	if !p.tty {
		fmt.Fprintf(p.w, "[%s] %s\n", time.Since(p.start).Round(time.Second), label)
	}
}

// fraction reports how far the current step is.
func (p *progress) fraction(f float64) {
	p.mu.Lock()
	p.frac = f
	p.mu.Unlock()
}

// cellDone counts a finished cell.
func (p *progress) cellDone() {
	p.mu.Lock()
	p.done++
	p.mu.Unlock()
}

func (p *progress) draw() {
	p.mu.Lock()
	done, total, label, frac := p.done, p.total, p.label, p.frac
	p.mu.Unlock()
	const width = 30
	filled := 0
	if total > 0 {
		filled = width * done / total
	}
	bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
	eta := time.Duration(total-done) * p.perCell
	step := label
	if frac >= 0 {
		step = fmt.Sprintf("%s %3.0f%%", label, 100*min(frac, 1))
	}
	line := fmt.Sprintf("%s %d/%d cells  %s elapsed, ~%s left  %s", bar, done, total,
		time.Since(p.start).Round(time.Second), eta.Round(time.Second), step)
	fmt.Fprintf(p.w, "\r\x1b[2K%s", line)
}

// close stops redrawing and leaves the line.
func (p *progress) close() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.wg.Wait()
	if p.tty {
		p.draw()
		fmt.Fprintln(p.w)
	}
}
