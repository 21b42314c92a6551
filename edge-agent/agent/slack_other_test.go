//go:build !linux

package agent

// slackChild and slackChildMain exist for TestMain; the timer slack tests
// are Linux's.
const slackChild = "FLEET_TEST_PROCESS_CHILD"

func slackChildMain() {}
