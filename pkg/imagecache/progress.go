package imagecache

import (
	"fmt"
	"time"
)

// DownloadMessage is what a provider shows in ImageReady while an image downloads: bytes,
// percentage when the size is known, and the average rate so far.
func DownloadMessage(url string, done, total int64, elapsed time.Duration) string {
	rate := ""
	if s := elapsed.Seconds(); s >= 1 && done > 0 {
		rate = fmt.Sprintf(", %s/s", FormatBytes(int64(float64(done)/s)))
	}
	if total > 0 {
		return fmt.Sprintf("Downloading %s: %s of %s (%d%%)%s", url, FormatBytes(done), FormatBytes(total), done*100/total, rate)
	}
	return fmt.Sprintf("Downloading %s: %s%s", url, FormatBytes(done), rate)
}

// FormatBytes writes a size for humans: "512 B", "3.4 MiB", "1.2 GiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
