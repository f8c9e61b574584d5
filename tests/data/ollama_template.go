// Renders Ollama Modelfile TEMPLATEs the way Ollama does: Go's text/template over a value with
// .System (the system messages) and .Messages (every message, system ones included, each with
// .Role and .Content). Reads {"template": "...", "conversations": [[{"role", "content"}, ...], ...]}
// as JSON on stdin and writes the rendered prompts as a JSON list of strings.
package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template      string      `json:"template"`
	Conversations [][]message `json:"conversations"`
}

func main() {
	var in request
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	parsed := template.Must(template.New("").Option("missingkey=zero").Parse(in.Template))
	out := []string{}
	for _, messages := range in.Conversations {
		var system []string
		for _, m := range messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
		}
		var rendered strings.Builder
		values := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": messages}
		if err := parsed.Execute(&rendered, values); err != nil {
			panic(err)
		}
		out = append(out, rendered.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
