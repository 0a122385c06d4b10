package controller

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	stargatev1 "stargate.io/stargate/api/v1alpha1"
)

// Every condition Stargate writes is computed here, from plain inputs, by a pure function (see
// conditions_test.go). A reader who wants to know where a condition comes from starts here.

// maxConditionMessage bounds condition messages: they may carry a console tail.
const maxConditionMessage = 32 * 1024

// scheduledCondition says whether an Operation holds its Server and host capacity (True) or what
// it waits for (False, with the reason).
func scheduledCondition(scheduled bool, reason, msg string) metav1.Condition {
	status := metav1.ConditionFalse
	if scheduled {
		status = metav1.ConditionTrue
	}
	return metav1.Condition{Type: stargatev1.ConditionScheduled, Status: status, Reason: reason, Message: truncate(msg, maxConditionMessage)}
}

// succeededCondition is the verdict of a finished Operation.
func succeededCondition(succeeded bool, reason, msg string) metav1.Condition {
	status := metav1.ConditionFalse
	if succeeded {
		status = metav1.ConditionTrue
	}
	return metav1.Condition{Type: stargatev1.ConditionSucceeded, Status: status, Reason: reason, Message: truncate(msg, maxConditionMessage)}
}

// stepCondition records a provider's step as the Operation condition of the same type: True when
// done, False while running or after failing (the reason says which), Unknown while the step has
// not started.
func stepCondition(s Step) metav1.Condition {
	status := metav1.ConditionUnknown
	switch s.State {
	case StepDone:
		status = metav1.ConditionTrue
	case StepFailed, StepInProgress:
		status = metav1.ConditionFalse
	}
	reason := s.Reason
	if reason == "" {
		reason = string(s.State)
	}
	if reason == "" {
		reason = "Unknown"
	}
	return metav1.Condition{Type: s.Type, Status: status, Reason: reason, Message: truncate(s.Message, maxConditionMessage)}
}

// nodeReadyCondition says whether the Node a joining Server registered is Ready. node is nil
// while no Node of that name exists.
func nodeReadyCondition(name string, node *corev1.Node) metav1.Condition {
	c := metav1.Condition{Type: stargatev1.ConditionNodeReady, Status: metav1.ConditionFalse, Reason: "WaitingForNode"}
	if node == nil {
		c.Message = fmt.Sprintf("Waiting for Node %s to join the cluster", name)
	} else {
		c.Message = fmt.Sprintf("Node %s joined; waiting for its kubelet to report Ready", name)
		for _, nc := range node.Status.Conditions {
			if nc.Type != corev1.NodeReady {
				continue
			}
			if nc.Status == corev1.ConditionTrue {
				c.Status, c.Reason, c.Message = metav1.ConditionTrue, "NodeReady", fmt.Sprintf("Node %s is Ready", name)
			} else {
				c.Message = fmt.Sprintf("Node %s joined but is not Ready yet: %s", name, nc.Message)
			}
		}
	}
	return c
}

// provisionedCondition is a Server's truth behind its one-word state: True while it runs an
// installation that finished successfully.
func provisionedCondition(ok bool, reason, msg string) metav1.Condition {
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	return metav1.Condition{Type: stargatev1.ConditionProvisioned, Status: status, Reason: reason, Message: truncate(msg, 1024)}
}

// validCondition says whether a profile passed the checks made before any server is touched.
func validCondition(err error) metav1.Condition {
	if err != nil {
		return metav1.Condition{Type: stargatev1.ConditionValid, Status: metav1.ConditionFalse, Reason: "InvalidUserData", Message: err.Error()}
	}
	return metav1.Condition{Type: stargatev1.ConditionValid, Status: metav1.ConditionTrue, Reason: "Valid", Message: "The user-data passed the checks"}
}

// stuckAt names the first unfinished step of an Operation, for timeout messages ("" if none).
func stuckAt(conds []metav1.Condition) string {
	for _, c := range conds {
		if c.Status != metav1.ConditionTrue && c.Type != stargatev1.ConditionSucceeded && c.Type != stargatev1.ConditionScheduled &&
			c.Type != stargatev1.ConditionHostReachable {
			return fmt.Sprintf("while at step %s (%s)", c.Type, c.Message)
		}
	}
	return ""
}

// progressMessage is an Operation's one-line message while its provider works: the message of
// the first step not done yet.
func progressMessage(steps []Step) string {
	for _, s := range steps {
		if s.State != StepDone {
			if s.Message != "" {
				return s.Message
			}
			return fmt.Sprintf("Waiting for %s", s.Type)
		}
	}
	return "Finishing"
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// powerCondition is a power step's condition (PoweredOff, PoweredOn).
func powerCondition(typ string, done bool, reason, msg string) metav1.Condition {
	status := metav1.ConditionFalse
	if done {
		status = metav1.ConditionTrue
	}
	return metav1.Condition{Type: typ, Status: status, Reason: reason, Message: msg}
}

// successMessage is a succeeded Operation's message.
func successMessage(op *stargatev1.Operation, server, took, ip string) string {
	switch op.Spec.Operation {
	case stargatev1.OperationPowerOn:
		return fmt.Sprintf("Server %s powered on%s", server, took)
	case stargatev1.OperationPowerOff:
		how := "shut down"
		if c := meta.FindStatusCondition(op.Status.Conditions, stargatev1.ConditionPoweredOff); c != nil && c.Reason == "ForcedOff" {
			how = "forced off after its grace period"
		}
		return fmt.Sprintf("Server %s powered off (%s)%s", server, how, took)
	case stargatev1.OperationReboot:
		return fmt.Sprintf("Server %s rebooted%s", server, took)
	}
	return fmt.Sprintf("Server %s repaved%s; ready at %s", server, took, ip)
}

// hostReachableCondition says whether the host that owns a Server (or runs an Operation) renews its
// Lease, as the host observer sees it; since is when the observer last saw the Lease change.
func hostReachableCondition(renewing bool, host, lease string, since time.Time) metav1.Condition {
	if renewing {
		return metav1.Condition{Type: stargatev1.ConditionHostReachable, Status: metav1.ConditionTrue, Reason: "HostRenewed",
			Message: fmt.Sprintf("Host %s renews its Lease %s again", host, lease)}
	}
	return metav1.Condition{Type: stargatev1.ConditionHostReachable, Status: metav1.ConditionFalse, Reason: "HostLost",
		Message: truncate(fmt.Sprintf("Host %s has not renewed its Lease %s since %s: the state of its machines is unknown. "+
			"No other host takes its Servers; hand them over explicitly (README, \"Several hosts\")",
			host, lease, since.UTC().Format(time.RFC3339)), 1024)}
}
