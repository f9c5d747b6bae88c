package config

import (
	"os"
	"strings"
	"testing"
)

// The README's configuration reference must name every key, so a key added
// in code without documentation fails the build.
func TestREADMENamesEveryKey(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	for _, k := range Keys {
		leaf := k.Name[strings.LastIndex(k.Name, ".")+1:]
		section := k.Name[:strings.LastIndex(k.Name, ".")]
		// Tables group related keys as `a.b` / `c`; accept the full name, or
		// the leaf written right after its section's other keys.
		if strings.Contains(readme, "`"+k.Name+"`") || strings.Contains(readme, "`"+section+"."+leaf+"`") ||
			strings.Contains(readme, "/ `"+leaf+"`") {
			continue
		}
		t.Errorf("README.md does not document config key %s", k.Name)
	}
}
