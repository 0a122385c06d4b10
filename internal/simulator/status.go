package simulator

import (
	stargatev1 "stargate.io/stargate/api/v1alpha1"
	"stargate.io/stargate/internal/controller"
)

// status builds a RepaveStatus step by step.
type status struct {
	controller.RepaveStatus
}

// newStatus starts a repave's status with every step of stargatev1.RepaveSteps pending.
func newStatus() *status {
	s := &status{}
	for _, t := range stargatev1.RepaveSteps {
		s.Steps = append(s.Steps, controller.Step{Type: t, State: controller.StepPending, Reason: "Pending"})
	}
	return s
}

func (s *status) set(typ string, state controller.StepState, reason, msg string) {
	for i := range s.Steps {
		if s.Steps[i].Type == typ {
			s.Steps[i] = controller.Step{Type: typ, State: state, Reason: reason, Message: msg}
		}
	}
}

// step returns the step of type typ.
func (s *status) step(typ string) controller.Step {
	for _, st := range s.Steps {
		if st.Type == typ {
			return st
		}
	}
	return controller.Step{}
}

// failStep marks a step failed and the repave with it.
func (s *status) failStep(typ, reason, msg string) {
	s.set(typ, controller.StepFailed, reason, msg)
	s.Failed, s.Reason, s.Message = true, reason, msg
}

func (s *status) fail(typ, reason, msg string) controller.RepaveStatus {
	s.failStep(typ, reason, msg)
	return s.RepaveStatus
}

func (s *status) finish() controller.RepaveStatus { return s.RepaveStatus }
