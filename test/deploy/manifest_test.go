package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func readRepo(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRuntimeClassMatchesDocs: deploy/runtimeclass.yaml is the RuntimeClass
// docs/kubernetes.md documents (its measured overhead), plus scheduling.
func TestRuntimeClassMatchesDocs(t *testing.T) {
	docs := readRepo(t, "docs/kubernetes.md")
	m := regexp.MustCompile("(?s)```yaml\n(apiVersion: node.k8s.io/v1\nkind: RuntimeClass\n.*?)```").FindStringSubmatch(docs)
	if m == nil {
		t.Fatal("docs/kubernetes.md shows no RuntimeClass")
	}
	rc := readRepo(t, "deploy/runtimeclass.yaml")
	if !strings.Contains(rc, m[1]) {
		t.Errorf("deploy/runtimeclass.yaml does not hold docs/kubernetes.md's RuntimeClass:\n%s", m[1])
	}
	if !strings.Contains(rc, "scheduling:\n  nodeSelector:\n    "+nodeLabel) {
		t.Errorf("deploy/runtimeclass.yaml does not schedule to %s", nodeLabel)
	}
}

// nodeLabel marks the nodes the installer runs on and msb pods go to.
const nodeLabel = `msb.dev/runtime: "true"`

// TestDaemonSetsMatchInstaller: the DaemonSets run the image
// hack/build-deploy-image.sh names, the installer's commands, on the
// labelled nodes, with the node's root where node-install.sh looks for it.
func TestDaemonSetsMatchInstaller(t *testing.T) {
	build := readRepo(t, "hack/build-deploy-image.sh")
	image := regexp.MustCompile(`(?m)^name=(\S+)$`).FindStringSubmatch(build)
	if image == nil {
		t.Fatal("hack/build-deploy-image.sh names no image")
	}
	for file, verb := range map[string]string{"deploy/msb-deploy.yaml": "run", "deploy/msb-cleanup.yaml": "cleanup"} {
		y := readRepo(t, file)
		for _, w := range []string{
			"image: " + image[1],
			`command: ["/opt/msb-deploy/node-install.sh", "` + verb + `"]`,
			"hostPID: true", "privileged: true", "mountPath: /host", "path: /\n",
			"nodeSelector:\n        " + nodeLabel,
		} {
			if !strings.Contains(y, w) {
				t.Errorf("%s lacks %q", file, w)
			}
		}
	}
	y := readRepo(t, "deploy/msb-deploy.yaml")
	for _, w := range []string{
		`command: ["/opt/msb-deploy/node-install.sh", "uninstall"]`, // preStop
		`command: ["test", "-f", "/host/var/lib/msb-deploy/installed"]`,
	} {
		if !strings.Contains(y, w) {
			t.Errorf("deploy/msb-deploy.yaml lacks %q", w)
		}
	}
	sh := readRepo(t, "deploy/node-install.sh")
	if !strings.Contains(sh, "MSB_DEPLOY_STATE=${MSB_DEPLOY_STATE:-/var/lib/msb-deploy}") || !strings.Contains(sh, `>"$st/installed"`) {
		t.Error("node-install.sh's ready marker moved: update msb-deploy.yaml's readinessProbe")
	}
}
