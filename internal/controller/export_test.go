package controller

import "stargate.io/stargate/internal/faults"

// DrawFault exposes the seeded probability draw, so that a test can say which repaves a fault
// with a probability must strike.
var DrawFault = faults.Draw
